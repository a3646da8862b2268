"""Data the package reads: GSM8K (:mod:`midblock_plugin.data.gsm8k`)."""
