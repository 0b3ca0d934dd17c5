-- genaudit.persister — the seed's name for the SnapshotPersister, kept as an
-- alias: a store is its own persister, and the logic lives in genaudit.store.
-- require("genaudit.persister").new(store) and genaudit.persister(store)
-- both return the store (see store.persister).
local store = require("genaudit.store")

return { new = store.persister }
