"""Training side of imgcls: data, architectures, conv arithmetic, export, reports."""
