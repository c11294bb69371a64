# syntax=docker/dockerfile:1
# gbackup worker image. Build: docker build -t gbackup .   Run: see docker-compose.yml.

# --- build: compile TypeScript with the dev dependencies -------------------------------------
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY bin ./bin
RUN npm run build

# --- runtime: production dependencies, compiled output, and the block-device tools ------------
FROM node:20-bookworm-slim AS runtime
# losetup (util-linux), mkfs/fsck for ext4, btrfs and xfs, dd (coreutils), zstd for chunk compression.
RUN apt-get update \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    util-linux e2fsprogs btrfs-progs xfsprogs coreutils zstd \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production \
    GBACKUP_CONFIG=/etc/gbackup/config.yaml
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY bin ./bin
# Attachment ledger and catalog live here; keep it on a volume so a restarted node can reconcile.
VOLUME ["/var/lib/gbackup"]
# Runs as root on purpose: attaching volumes needs losetup on /dev/loop*.
ENTRYPOINT ["node", "bin/gbackup.js"]
CMD ["worker"]
