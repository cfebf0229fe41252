"""Serving a model over HTTP: the service (app.py, a Starlette application, with its web page page.html), the
dynamic batching of concurrent requests (batching.py), the model as the service runs it (model.py), and
running it on uvicorn (server.py).

Sits on deploy/ (the model file and its predictions) and data/ (decoding, the eval view). The web stack
(starlette, uvicorn, python-multipart: the `serve` extra) is imported by app.py and server.run alone, so
importing this package or server.py needs none of it.
"""
