"""The core: the chat pipeline and the services around it, knowing nothing of HTTP. They
drive the components below (`llm`, `retrieval`, `db`) and are assembled once at start
(`components`)."""
