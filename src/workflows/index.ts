// The workflows a gbackup worker runs; their names are the public contract (api.ts WORKFLOWS).
export { backupVolume } from './backup.js';
export { restoreBackup } from './restore.js';
export { deleteBackup } from './delete.js';
export { verifyBackup } from './verify.js';
export { lookup, createVolume, deleteVolume, importVolume, exportVolume, attachVolume, detachVolume, createSnapshot, deleteSnapshot, importBackupRecord, rebuildCatalog, checkTargets } from './manage.js';
export { runPolicy, pruneBackups } from './policy.js';
export { copyBackup } from './copy.js';
export { backupGroup } from './group.js';
