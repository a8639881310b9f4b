"""Quality measurement: benchmark datasets, task definitions, scoring on llama.cpp,
perplexity, KL divergence and throughput, each producing lake events with time windows."""
