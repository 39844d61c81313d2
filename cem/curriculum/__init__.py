"""Building a round's training set (METHOD.md, step 5): CPT text plus the four CIT types.

``normative``, ``extractive``, ``review`` and ``general`` build the instruction rows,
``render`` turns instructions into strings, ``mixing`` shares the tokens between CPT and
CIT under a paradigm, and ``build`` is the ``cem build`` task.
"""
