"""Service-agnostic machinery: I/O-free HTTP rules, the one transport, uploads, downloads.

Imports only :mod:`audioshake_async.errors`, :mod:`audioshake_async.models` and the converter;
never a service package, the batch engine or the CLI.
"""
