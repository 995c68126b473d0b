"""DNAT in training loops that frameworks own.

- ``fxdnat.integrations.lightning.DNATCallback``: a Lightning callback (extra ``lightning``);
- ``fxdnat.integrations.hf.DNATTrainerCallback``: a ``transformers.Trainer`` callback (extra
  ``hf``);
- ``fxdnat.integrations.driver.Driver``: what both do, for any other loop that runs ω's steps
  itself (a plain loop can use ``fxdnat.DNAT`` directly: docs/library.md).

Each submodule imports its framework; this package imports none.
"""
