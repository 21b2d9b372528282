"""Updates that roll back: release archives (archive), the releases on the speaker (releases), an update with its
health watch and automatic rollback (rollout), systemd as the service manager (systemctl), and the hand-over of an
archive from the unprivileged service (staff page, fleet) to the root updater unit (spool)."""
