"""Infrastructure the feature slices share: database, ids, paging, time, errors, logs, HTTP
plumbing (request ids, rate limits, HTTP metrics). The lowest layer of `app`: it imports no
slice, no `app.storage`, and not the training core."""
