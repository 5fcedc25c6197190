"""`make bench`: Vigil's throughput and latency against two reference designs, in one run.

benchmarks.run_all is the entry point; benchmarks.load generates the HTTP load,
benchmarks.stack starts and stops the processes, benchmarks.sync_api is reference design (b).
"""
