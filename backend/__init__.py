"""ragstream backend: a FastAPI service that answers with retrieval-augmented chat."""
