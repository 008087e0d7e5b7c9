// Package dtablerouter is what xcaddy imports to build Caddy with this
// project's modules:
//
//	xcaddy build v2.11.9 --with github.com/dtablecluster/dtable-router=.
//
// (xcaddy.sh does exactly that.) The modules themselves are in caddymodule/.
package dtablerouter

import _ "github.com/dtablecluster/dtable-router/caddymodule"
