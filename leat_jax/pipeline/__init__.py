"""The jobs behind the command line: image IO, manifest, immunize, report.

Modules: ``images`` (decode/encode, modes, 16-bit, alpha, EXIF; the bound
after quantisation), ``png16`` and ``tiff16`` (16-bit colour files, which
Pillow reads as 8 bits), ``inputs`` (what to protect, where results go),
``manifest`` (what is done), ``victimset`` (victims and their weights),
``config`` (settings), ``immunize`` (the job), ``report`` (JSON report,
contact sheet), ``progress`` (the progress bar). Importing this package
starts no JAX work.
"""
