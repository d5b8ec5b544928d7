"""One coordinator process: config, domain state, placement, scheduler, DA layer, pipeline, entry."""
