"""The OpenGrid Python client (see ``client.py``); ``opengrid.testing`` boots a local colony."""
