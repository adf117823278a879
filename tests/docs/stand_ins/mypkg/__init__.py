"""Stand-ins for the application package the docs' examples name (``mypkg``).

The Configuration example registers ``mypkg.backends:MyBackend`` and uses
``mypkg.proxies.AuditProxy``; these make it load and configure for real.
"""
