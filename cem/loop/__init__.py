"""Step 7 of CEM: the loop. ``run`` drives the rounds (``cem run``), ``stages`` runs each
stage once behind a done-marker, ``summary`` computes gains, forgetting and cost, and
``mirror`` copies the results to ``D/metrics.csv`` and Weights & Biases, and ``inspector``
writes ``D/inspect.html``, one page on why each mistake was fixed or not."""
