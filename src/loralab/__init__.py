"""loralab: controlled, measurable LoRA fine-tuning on small, heterogeneous data."""

__version__ = "0.1.0"
