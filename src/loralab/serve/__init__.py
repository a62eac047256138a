"""`loralab serve`: many resident adapters behind one OpenAI-compatible API.

    registry.py  the folder of adapter folders (safetensors only, inside the folder only)
    bank.py      resident adapters as stacked A/B tensors per linear layer
    engine.py    continuous batching, KV cache, per-row adapters, per-request sampling
    protocol.py  request/response models shared by the server and the clients
    api.py       the FastAPI app (`create_app`), limits, metrics, remote backend
"""
