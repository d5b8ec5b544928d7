"""The DA layer: the interface every layer implements, the metering wrapper, and the layers."""
