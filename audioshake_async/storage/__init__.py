"""Stores for a batch's inputs and outputs beyond the local disk (S3 and S3-compatible).

Sits beside :mod:`audioshake_async.core` (which holds the output seam and the disk writer) and
below the batch engine. The S3 library (``obstore``, the optional ``[s3]`` extra) is imported
only when an ``s3://`` location is used, so the core install stays lean.
"""
