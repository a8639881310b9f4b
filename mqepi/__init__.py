"""mqepi: which per-layer quantization of an LLM gives the most intelligence per joule.

The library under the flows and the CLI. Importing it needs no Prefect.
"""

__version__ = "0.1.0"

#: What every event this process records names as its producer.
PRODUCER = f"mqepi/{__version__}"
