"""A server's files: safe paths beneath its files directory, and the routes over them."""
