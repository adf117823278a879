"""kvs: named, lockable key-value stores over dogpile.cache."""
