"""``AuditProxy``: an application's proxy that sees every write (kvs's LeaseProxy)."""

from kvs.proxy import LeaseProxy


class AuditProxy(LeaseProxy):
    pass
