"""Shared foundations: settings, database, tables, storage, logging, ids, keys, broker."""
