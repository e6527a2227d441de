"""The search benchmark's shared parts (``bench/search_benchmark.py``): recorded tables and the space a
peer searches (``tables``), the metrics (``metrics``), the simulated clock (``simulator``) and the
peers, each run by its own library (``adapters``)."""
