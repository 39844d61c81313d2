"""Step 6 of CEM: train on the round's CPT + CIT set jointly, merge, save ``D/model``.

``data`` tokenises and packs, ``module`` holds the joint objective, ``finetune`` the LoRA /
full-weight choice and the merge, ``train`` the ``cem train`` task. The names below are
light to import, so that configs can be checked before torch is loaded.
"""

# Lightning strategies that shard the model (FSDP, DeepSpeed ZeRO): CUDA only, and each
# writes its checkpoints with its own writer (cem.training.strategies).
SHARDED_STRATEGIES = ("fsdp", "deepspeed")
