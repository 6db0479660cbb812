"""The HTTP face of LeaF: a FastAPI app that never loads a model or imports torch."""
