"""The web layer, the only one that knows HTTP: the app (`app.create_app`), routes per
resource, request and response bodies (`schemas`), dependencies (`deps`), errors as
HTTP responses (`errors`) and answers as Server-Sent Events (`sse`)."""
