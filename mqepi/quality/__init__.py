"""Quality measurement: benchmark datasets, task definitions, scoring on llama.cpp,
perplexity, KL divergence and throughput, each producing lake events with time windows.

Modules (none needs Prefect):

``tasks``       the benchmark registry: every ``tasks/<name>.json`` as a ``TaskDef``
``datasets``    dataset loaders (registered by name) and ``load_dataset``
``prompts``     items, question sets, lm-eval prompt templates, seeded selection
``scoring``     multiple choice with llama-perplexity: task file, results, token counts
``perplexity``  perplexity and KLD against the F16 base's cached logits
``throughput``  llama-bench prompt processing and generation
``evaluate``    one evaluation of one model (the library behind ``mqepi evaluate``)
"""
