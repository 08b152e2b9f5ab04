"""Retrieval: dense + BM25 hybrid search with Pinecone-language metadata filters."""
