"""Knowledge from mistakes: mistake selection, knowledge points, sources and the leak guard."""
