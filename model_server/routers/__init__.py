"""HTTP routes of the model server (thin: they translate requests into dataplane calls)."""
