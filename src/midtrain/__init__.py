"""midtrain: microanneal studies for deciding what data belongs in midtraining."""

__version__ = "0.2.0"
