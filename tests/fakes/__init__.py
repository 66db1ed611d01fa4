"""Local fake servers the tests send to: a webhook receiver and (later) each vendor's API."""
