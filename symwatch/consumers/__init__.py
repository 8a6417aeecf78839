"""What reads a run besides the TUI: alerts, export, the HTML report, the headless summary."""
