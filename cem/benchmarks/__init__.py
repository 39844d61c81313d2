"""Benchmarks: loaders for multiple-choice files and the embedded ``world`` benchmark."""
