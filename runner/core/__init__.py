"""The ground floor: the typed models, the settings and the one exception, used by every layer."""
