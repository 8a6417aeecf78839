"""Getting measurements out of the process: the publisher thread, CurveZMQ, transition detection on the publisher thread."""
