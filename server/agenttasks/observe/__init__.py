"""What the service tells its operators about itself while it runs: logs (logs.py), and beside
them metrics and traces, each in its own module so that a deployment pays only for what it uses."""
