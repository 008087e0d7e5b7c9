// Package deploy holds the configuration the compose files at the
// repository root mount (dtable-server-01/, dtable-server-02/: each stand-in
// server's dtable_server_config.json) and, in its tests, the check of those
// files: go test ./deploy loads docker-compose.yml and
// docker-compose.proxy-node.yml with the Compose Specification's Go loader
// (github.com/compose-spec/compose-go/v2) and checks them against the
// Dockerfile, the Caddyfile and the server configs, since no container
// engine runs where they are developed. It has no code of its own.
package deploy
