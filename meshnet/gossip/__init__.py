"""memberlist-compatible SWIM + Lifeguard gossip, as a pure (sans-IO) core.

``Swim`` is the facade; ``messages``/``codec``/``packet`` are the wire; ``config`` has the presets.
"""
