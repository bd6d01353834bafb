"""The benchmarks: ``explainstream bench`` and its pieces.

``cli`` holds the ``bench`` command (engine bench, ``make-model``) and lists the modules that
add the other subcommands (``peer``, ``pipeline``, ``priority``, ``memory``, ``scale``,
``e2e``, ``quality``, ``report``); ``kit``, ``proc``, ``prof`` and ``stats`` are what they share.
Benchmarks print figures and never fail on a time.
"""
