"""What the service tells its operators about itself: metrics (and, beside them, logs and traces)."""
