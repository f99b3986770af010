"""Events on their way to subscribers: the event manager, subscriptions and targets.

``_manager`` holds the subscription table and fans events out; ``_subscription`` is the
public handle; ``_targets`` are where events go (inboxes, actors, handler runners);
``_runners`` run handlers (threads or event-loop tasks); ``_interest`` tells emitters
what anybody wants; ``_hub`` is the system's side of all this; ``_telemetry`` is the
process-wide handler registry. Nothing here decides a circuit.
"""
