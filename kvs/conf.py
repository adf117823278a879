"""oslo.config options of kvs.

``[kvs]`` holds process-wide defaults; each ``[store:NAME]`` section configures
one store.  Store sections are found in the parsed files, so their options are
registered per section when the config is loaded (see :mod:`kvs.loader`).

``list_opts()`` feeds ``oslo-config-generator --namespace kvs``; the store
options appear there under ``[store_template]``, a section kvs never reads, so
a sample loaded as it is creates no store.
"""

from __future__ import annotations

from oslo_config import cfg

from kvs import serializers

KVS_GROUP = "kvs"
STORE_GROUP_PREFIX = "store:"

#: Where the sample config documents the options of a [store:NAME] section.
STORE_TEMPLATE = cfg.OptGroup(
    "store_template", title="Options of each [store:NAME] section",
    help="The options of one store. kvs reads them from one section per store, named "
         "[store:NAME] (for example [store:sessions]); this section itself is never read, "
         "so copy the options you need into your store sections.")

kvs_opts = [
    cfg.FloatOpt("default_lock_timeout", default=5.0, min=0,
                 help="Seconds a lease lasts when a store does not set lock_timeout. "
                      "0 means leases never expire (a crashed holder then blocks the key "
                      "until an operator breaks the lease)."),
    cfg.BoolOpt("enable_key_mangler", default=True,
                help="Hash every key with SHA-1 (after the store's key prefix) unless a "
                     "store or its backend supplies its own mangler. kvs.sqlite keeps keys "
                     "as given in the files it creates (SQLite has no key-length limit); "
                     "stores with a security_strategy and no mangler of their own hash names with "
                     "their secret."),
    cfg.StrOpt("config_prefix", default="kvs",
               help="Prefix of the dogpile.cache region names kvs creates "
                    "(<config_prefix>.<store>); it shows in dogpile's logs."),
    cfg.ListOpt("backends", default=[],
                help="Extra dogpile.cache backend classes to register. As in Keystone, "
                     "'package.module.Class' is registered as 'openstack.kvs.Class' (class "
                     "names must be unique) and also under its dotted path; "
                     "'name=package.module:Class' registers it as 'name' only."),
]

store_opts = [
    cfg.StrOpt("backend", default="kvs.sqlite",
               help="dogpile.cache backend name: kvs.memory, kvs.sqlite, kvs.redis, "
                    "kvs.redis_sentinel, kvs.redis_cluster, kvs.memcached, kvs.etcd, or a stock "
                    "dogpile.cache backend (not fenced)."),
    cfg.MultiStrOpt("backend_argument", default=[], secret=True,
                    help="A backend argument as 'name:value'; repeat for several. Values "
                         "are parsed per backend ('yes'/'true' are booleans, 'a, b' lists)."),
    cfg.FloatOpt("lock_timeout", min=0,
                 help="Seconds a lease lasts (float). Default: [kvs] default_lock_timeout. "
                      "0 means never expires."),
    cfg.FloatOpt("lock_wait_timeout", min=0,
                 help="Seconds acquire() waits for a lease. Default: lock_timeout."),
    cfg.StrOpt("key_prefix",
               help="Namespace of every key of this store. Default: the store name."),
    cfg.StrOpt("serializer", default=serializers.DEFAULT_SERIALIZER,
               choices=sorted(serializers.SERIALIZERS),
               help="Value codec. pickle runs code on load: use it only on a backend "
                    "nobody else can write to."),
    cfg.FloatOpt("default_ttl", min=0,
                 help="Seconds until a written value expires. Default: never."),
    cfg.BoolOpt("near_cache",
                help="Serve hot get/get_multi/exists from process memory, kept coherent by "
                     "Redis's server-assisted invalidation (kvs.redis and "
                     "kvs.redis_sentinel only). Default: off."),
    cfg.IntOpt("near_cache_size", min=1,
               help="Values the near cache keeps (LRU). Default: 10000."),
    cfg.ListOpt("proxies", default=[],
                help="dogpile.cache ProxyBackend classes as dotted paths; the first is "
                     "outermost."),
    cfg.BoolOpt("locking", default=True,
                help="False turns leases into no-ops, as in Keystone."),
    cfg.StrOpt("security_strategy", default="none", choices=["none", "mac", "encrypt"],
               help="none: values stored as serialized; mac: HMAC-SHA256 over key and value "
                    "(tampered, forged or moved values are refused); encrypt: AES-GCM "
                    "authenticated encryption (needs the cryptography package)."),
    cfg.StrOpt("secret_key", secret=True,
               help="Secret for security_strategy mac or encrypt. Every process sharing "
                    "the store needs the same one."),
    cfg.ListOpt("secret_keys", secret=True,
                help="Secrets for security_strategy mac or encrypt, newest first, for key "
                     "rotation: values are sealed with the first and open with any; key "
                     "names derive from the last. Instead of secret_key."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the ``[kvs]`` options on ``conf``."""
    conf.register_opts(kvs_opts, group=KVS_GROUP)


def register_store_opts(conf: cfg.ConfigOpts, store: str) -> str:
    """Register the store options for ``[store:<store>]``; return the group name."""
    group = STORE_GROUP_PREFIX + store
    conf.register_opts(store_opts, group=group)
    return group


def list_opts() -> list[tuple[str | cfg.OptGroup, list[cfg.Opt]]]:
    """Options for oslo-config-generator (entry point ``oslo.config.opts: kvs``)."""
    return [(KVS_GROUP, list(kvs_opts)), (STORE_TEMPLATE, list(store_opts))]
