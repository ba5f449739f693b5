"""The config stage: every section's defaults, their checks, and the config-file argument.

configs/*.py start from `defaults.base_config()`; `checks.validate` refuses a bad value
with its key and the allowed values before anything is compiled; `files` reads the
`file.py:key=value` argument of `--config`.
"""
