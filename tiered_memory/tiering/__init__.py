"""The tier manager (promote, demote, load, unload, maintain: the only writer of tier state), its
background thread, decay, expiry and per-namespace topic models."""
