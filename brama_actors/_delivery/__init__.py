"""Events on their way to subscribers: the event manager, subscriptions and targets.

``_manager`` holds the subscription table and fans events out; ``_subscription`` is the
public handle; ``_targets`` are where events go (inboxes, actors, handler runners);
``_telemetry`` is the process-wide handler registry; ``_monitor`` the
``ConnectionMonitor`` actor base class. Nothing here decides a circuit.
"""
